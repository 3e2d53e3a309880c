"""The ``stable_diffusion`` node runtime: OpenAI Images routes over stable-diffusion.cpp.

Where to start: :mod:`plugin` registers the runtime, :mod:`runtime` holds its routes and turns
each request into one sd.cpp job. The subpackages, in the order a request meets them:

- :mod:`.models`: the model folders of the models directory (``model_folder``), what family each
  one is (``families``, from its tensor names: ``tensor_index``);
- :mod:`.jobs`: a request translated into one typed stable-diffusion.cpp job (``job``): the
  quality and style settings (``params``) and the LoRAs (``loras``);
- :mod:`.engine`: runs the jobs one at a time (``engine``), in a worker process or in this one
  (``runners``, ``worker_runner``, ``worker``), through the binding's calls (``sdcpp_calls``);
- :mod:`.answers`: the images as the client gets them (``imaging``), streamed as events
  (``streaming``, ``events``) with partial images (``previews``);
- :mod:`.tools`: the ``demo``, ``demo-model`` and ``quantize`` commands (:mod:`commands`) and the
  synthetic models the tests use.

The subpackages' ``__init__`` modules import nothing: the worker process imports
``engine.worker`` and what it needs, never the node's web stack.
"""
