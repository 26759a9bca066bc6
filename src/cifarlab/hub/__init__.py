"""Save, load and share trained models through the Hugging Face Hub.

A saved model is a folder, local or a Hub model repo, holding ``model.safetensors`` (or shards with their
index) and ``config.json`` (what rebuilds the network: registry name and options, classes, normalisation).

- :mod:`.saved`: the saved-model config, ``save_pretrained`` / ``load_pretrained`` / ``from_pretrained`` (a local
  folder, a run folder's newest checkpoint, or a Hub download);
- :mod:`.card`: the model card of a pushed run, every number read from its record;
- :mod:`.push`: ``cifarlab push``: the upload folder of a finished run, and the upload;
- :mod:`.predict`: ``cifarlab predict``: top-k classes for image files;
- :mod:`.commands`: the command line of the two.

``huggingface_hub`` and torch are imported inside the functions that need them.
"""

from .predict import predict, prepare_image
from .push import build_upload_folder, push_run
from .saved import HubConfig, Pretrained, from_pretrained, hub_config, load_pretrained, save_pretrained

__all__ = ["HubConfig", "Pretrained", "build_upload_folder", "from_pretrained", "hub_config", "load_pretrained",
           "predict", "prepare_image", "push_run", "save_pretrained"]
