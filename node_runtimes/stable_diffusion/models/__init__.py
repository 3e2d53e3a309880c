"""The models a node serves: its model folders (``model_folder``), the family of each
(``families``), recognised from the tensor names of its weights (``tensor_index``)."""
