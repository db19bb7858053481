"""Per-track emotion smoothing: EMA over probabilities, with hysteresis on label changes.

The smoothed distribution is ``p <- alpha * new + (1 - alpha) * p``. An event's
``label`` is always the argmax of the smoothed ``scores`` published beside it (the
first of equal maxima), and ``confidence`` its probability: the label never
contradicts the scores. The hysteresis decides when a change is *reported*: an
``update`` event fires only when another label leads the smoothed distribution,
reaches ``min_confidence`` and beats the last reported label (``track.label``, the
``previous_label`` of the update) by ``margin``: single-frame flicker never becomes an
event. Between updates, a ``summary`` or ``end`` event shows the current argmax,
which may differ from the last reported label while its lead is below the margin.
"""

from typing import Dict, List, Optional, Sequence, Tuple

from agent.tracking.tracker import Track


class EmotionSmoother:
    def __init__(
        self, labels: Sequence[str], alpha: float, min_confidence: float, margin: float = 0.1
    ) -> None:
        self.labels: List[str] = list(labels)
        self.alpha = alpha
        self.min_confidence = min_confidence
        self.margin = margin

    def observe(self, track: Track, probs: Sequence[float]) -> Optional[Tuple[Optional[str], str]]:
        """Fold one frame's probabilities in; return (old, new) when the label changes.

        Plain Python floats: a few labels per face, every face of every frame."""
        new = [float(p) for p in probs]
        if track.probs is None:
            track.probs = new
        else:
            keep, alpha = 1.0 - self.alpha, self.alpha
            track.probs = [keep * old + alpha * p for old, p in zip(track.probs, new)]
        smoothed = track.probs
        best = max(range(len(smoothed)), key=smoothed.__getitem__)  # the first of equal maxima
        best_label = self.labels[best]
        if track.label is None:
            track.label = best_label
            return None  # the first label is reported by the "new" event
        if best_label == track.label:
            return None
        current = self.labels.index(track.label)
        lead = smoothed[best] - smoothed[current]
        if smoothed[best] >= self.min_confidence and lead >= self.margin:
            old, track.label = track.label, best_label
            return old, best_label
        return None

    def scores(self, track: Track) -> Dict[str, float]:
        if track.probs is None:
            return {}
        return {label: round(float(p), 4) for label, p in zip(self.labels, track.probs)}

    def label(self, track: Track) -> Optional[str]:
        """The argmax of the smoothed scores (the first of equal maxima)."""
        if track.probs is None:
            return None
        probs = track.probs
        return self.labels[max(range(len(probs)), key=probs.__getitem__)]

    def confidence(self, track: Track) -> Optional[float]:
        """The smoothed probability of :meth:`label`."""
        if track.probs is None:
            return None
        return float(max(track.probs))
