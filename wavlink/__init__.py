"""WavLink training, evaluation and tooling.

The model itself lives in the Hub-served top-level modules (`configuration_wavlink`, `modeling_wavlink`,
`processing_wavlink`); this package holds what only training and tooling need.
"""

from configuration_wavlink import WavLinkConfig
from modeling_wavlink import WavLinkModel, matryoshka_contrastive_loss
from processing_wavlink import WavLinkProcessor, load_audio

__all__ = ["WavLinkConfig", "WavLinkModel", "WavLinkProcessor", "load_audio", "matryoshka_contrastive_loss"]
