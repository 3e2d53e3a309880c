"""A request translated into one stable-diffusion.cpp job: the quality and style settings
(``params``) and the LoRAs (``loras``)."""
