"""RVOS model: config, encoder, ConvLSTM decoder, the model with explicit recurrent state, and checkpoints."""

from rvos_batch.model.checkpoint import file_sha256, load_checkpoint, save_checkpoint
from rvos_batch.model.config import ConfigError, RVOSConfig
from rvos_batch.model.decoder import ConvLSTMCell, RVOSDecoder
from rvos_batch.model.encoder import Encoder, load_backbone_weights, mobilenet_v2_weights_path
from rvos_batch.model.rvos import RVOS, RVOSState

__all__ = [
    "RVOS",
    "ConfigError",
    "ConvLSTMCell",
    "Encoder",
    "RVOSConfig",
    "RVOSDecoder",
    "RVOSState",
    "file_sha256",
    "load_backbone_weights",
    "load_checkpoint",
    "mobilenet_v2_weights_path",
    "save_checkpoint",
]
