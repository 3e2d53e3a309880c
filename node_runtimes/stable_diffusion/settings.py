"""The ``stable_diffusion`` runtime's settings: its ``[runtime.stable_diffusion]`` table.

Environment: ``LLMLB_NODE_RUNTIME__STABLE_DIFFUSION__<KEY>``; the ``llmlb node`` flags
``--threads``, ``--idle-unload``, ``--weights``, ``--cancel`` and ``--max-job-seconds`` set
``threads``, ``idle_unload_s``, ``weights_preference``, ``cancel`` and ``max_job_seconds``.

``cancel`` is how a job stops when its client has gone or it runs past ``max_job_seconds``:
``now`` (default) runs each loaded model in a worker process that the node kills, mid-image
included, then loads the model again in a fresh one (the cost is logged and in the engine's
status); ``next_image`` runs stable-diffusion.cpp in the node's process and stops at the next
image boundary (an image in progress always ends). ``max_job_seconds`` (0: no limit) keeps below
the router's ``upstream_timeout_s`` (900 s), so a client hears why from the node: 504
``job_timeout``.

``lora_dir`` is the node-wide LoRA folder (default ``<models_dir>/loras``; each model folder's own
``loras/`` subfolder adds to it). ``preview_method`` is how partial images of streamed requests
are made: ``auto`` (default) leaves it to each model (its ``model.toml``, else ``tae`` with a
TAESD file, ``proj`` without; see ``previews``); any other value holds for every model of the
node (``none`` turns partial images off, ``proj`` makes them free).

The upload limits have the defaults of the router's ``[plugin.images]`` limits. Keep them at or
above the router's: the router checks every upload first, and a node that refused what its router
accepted would fail requests the client was told were fine. An operator who raises the router's
limits raises these too.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from llmlb_node.stable_diffusion.models.model_folder import PreviewMethod

MB = 1024 * 1024
CancelMode = Literal["now", "next_image"]
# Below the router's upstream_timeout_s (900 s): the client hears why from the node, not a timeout.
MAX_JOB_SECONDS = 600.0


class StableDiffusionSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    # Unload a model unused for this long, in seconds (0: never).
    idle_unload_s: Annotated[float, msgspec.Meta(ge=0)] = 600.0
    # Threads for stable-diffusion.cpp (0: all cores).
    threads: Annotated[int, msgspec.Meta(ge=0)] = 0
    # Weights format when a model folder holds several: auto (by environment), safetensors, gguf.
    weights_preference: Literal["auto", "safetensors", "gguf"] = "auto"
    # Node-wide LoRA folder (default: <models_dir>/loras).
    lora_dir: str | None = None
    # Partial images of streamed requests, for every model: auto (each model's own), none, proj, tae, vae.
    preview_method: PreviewMethod = "auto"
    # Upload limits of edits and variations (keep >= the router's [plugin.images] limits): bytes
    # of one file, pixels of one image, pixels of all images and the mask of one request.
    max_upload_bytes: Annotated[int, msgspec.Meta(gt=0)] = 4 * MB
    max_pixels: Annotated[int, msgspec.Meta(gt=0)] = 4096 * 4096
    max_request_pixels: Annotated[int, msgspec.Meta(gt=0)] = 4 * 4096 * 4096
    # Images decoded at once (on worker threads, off the event loop).
    max_concurrent_decodes: Annotated[int, msgspec.Meta(ge=1, le=64)] = 2
    # Seconds between a running job's progress lines at info level ("step 3/20 ... s/step");
    # 0: one per step. The other steps are logged at debug level.
    progress_log_interval_s: Annotated[float, msgspec.Meta(ge=0)] = 2.0
    # How a job stops when its client has gone or it runs too long: now (a worker process per
    # model, killed mid-image, the model then reloaded) or next_image (in-process, at the next image).
    cancel: CancelMode = "now"
    # Seconds a job may generate before it is stopped with 504 job_timeout (0: no limit).
    max_job_seconds: Annotated[float, msgspec.Meta(ge=0)] = MAX_JOB_SECONDS
