"""Training: `TrainConfig`, the loop (`train`), atomic checkpoints, and the recall demo."""
from nha.train.checkpoint import load_checkpoint, resolve_checkpoint, save_checkpoint
from nha.train.config import TrainConfig

__all__ = ["TrainConfig", "load_checkpoint", "resolve_checkpoint", "save_checkpoint", "train"]


def train(cfg: TrainConfig):
    """Run or resume training (see `nha.train.loop.train`)."""
    from nha.train.loop import train as _train  # noqa: PLC0415

    return _train(cfg)
