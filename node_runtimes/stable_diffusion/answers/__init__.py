"""The node's answers: images encoded as the client asked (``imaging``), streamed answers
(``streaming``, with the events of ``events``) and their partial images (``previews``)."""
