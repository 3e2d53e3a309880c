"""The runtime's tools: the demo (``demo``), synthetic models for it and for the tests
(``demo_checkpoint``, ``demo_flux``, ``demo_lora``) and GGUF quantisation (``quantize``)."""
