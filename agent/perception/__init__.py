"""Perception: one frame in, faces out (box, score, 68 landmarks, emotion).

detect -> crop -> landmarks -> emotion, batched across the faces of a frame.
Models are reached through plain callables (batch in, output out) so this
package does not care which backend (TensorRT, ONNX Runtime) runs them.
"""

from agent.perception.faces import EmotionResult, Face
from agent.perception.frame import Perception, PerceptionSettings

__all__ = ["EmotionResult", "Face", "Perception", "PerceptionSettings"]
