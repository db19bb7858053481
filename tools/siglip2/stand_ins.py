"""Random stand-ins of the two Hugging Face repositories, in their exact layout (the
tests and tools/siglip2/bench.py; no model hub is reachable where they run).

``make_siglip_checkpoint``: a SigLIP checkpoint directory (config.json, weights,
preprocessor_config.json) like google/siglip2-so400m-patch16-384's, with a tiny random
SiglipModel (vision: hidden 32, 2 layers, patch 16, image 64). ``make_heads``: 40
``model_<emotion>_best.pth`` state dicts of the model card's MLP and the neutral-stats
JSON, as in laion/Empathic-Insight-Face-Large. Needs torch and transformers.
"""

import json
from pathlib import Path
from typing import List

import torch

# names as LAION's file names could spell them; the code never relies on them
EMOTIONS: List[str] = [
    "Affection", "Amusement", "Anger", "Astonishment_Surprise", "Awe", "Bitterness",
    "Concentration", "Confusion", "Contemplation", "Contempt", "Contentment",
    "Disappointment", "Disgust", "Distress", "Doubt", "Elation", "Embarrassment",
    "Emotional_Numbness", "Fatigue_Exhaustion", "Fear", "Helplessness",
    "Hope_Enthusiasm_Optimism", "Impatience_and_Irritability", "Infatuation", "Interest",
    "Intoxication_Altered_States_of_Consciousness", "Jealousy_&_Envy", "Longing",
    "Malevolence_Malice", "Pain", "Pleasure_Ecstasy", "Pride", "Relief", "Sadness",
    "Sexual_Lust", "Shame", "Sourness", "Teasing", "Thankfulness_Gratitude", "Triumph",
]  # fmt: skip
NEUTRAL_NAME = "neutral_stats_cache-_human-binary-big-mlps_v8_two_stage_higher_lr_stage2_5_200+"


def make_siglip_checkpoint(
    directory: Path,
    hidden: int = 32,
    layers: int = 2,
    image: int = 64,
    patch: int = 16,
    heads: int = 4,
    intermediate: int = 64,
    seed: int = 0,
) -> Path:
    from transformers import SiglipConfig, SiglipModel

    torch.manual_seed(seed)
    config = SiglipConfig(
        vision_config={
            "hidden_size": hidden,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "intermediate_size": intermediate,
            "image_size": image,
            "patch_size": patch,
        },
        text_config={
            "hidden_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 32,
            "vocab_size": 64,
            "max_position_embeddings": 16,
            "pad_token_id": 1,
            "bos_token_id": 2,
            "eos_token_id": 3,
        },
    )
    model = SiglipModel(config).eval()
    with torch.no_grad():  # random init is near-uniform; spread the weights a little
        for p in model.vision_model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(directory))
    processor = {  # as in the real repository (no Pillow/torchvision needed to write it)
        "image_processor_type": "SiglipImageProcessor",
        "do_resize": True,
        "size": {"height": image, "width": image},
        "resample": 2,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    }
    (directory / "preprocessor_config.json").write_text(json.dumps(processor), encoding="utf-8")
    return directory


def make_heads(directory: Path, width: int = 32, seed: int = 1, count: int = 40) -> Path:
    """The model card's MLPs (width -> 1024 -> 512 -> 256 -> 1) with random weights."""
    from tools.siglip2.heads import MLP

    torch.manual_seed(seed)
    directory.mkdir(parents=True, exist_ok=True)
    stats = {}
    for i, emotion in enumerate(EMOTIONS[:count]):
        mlp = MLP(width)
        key = f"model_{emotion}_best"
        torch.save(mlp.state_dict(), str(directory / f"{key}.pth"))
        stats[key] = {"mean": round(0.05 * (i - 20), 3), "std": 1.0}
    (directory / NEUTRAL_NAME).write_text(json.dumps(stats), encoding="utf-8")
    return directory
