"""Front doors: the command line, the ``torch.compile`` backend, the model zoo loader and the demo model."""
