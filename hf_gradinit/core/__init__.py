"""The GradInit algorithm on a plain ``nn.Module`` and an iterator of batches.

Torch only: no transformers, accelerate or datasets here. Multi-process averaging and the
progress bar are handed in by the caller (:mod:`hf_gradinit.api`).

* :mod:`.selection`: which tensors get a scale, read off the model;
* :mod:`.batches`: one batch split into the two sub-batches S and S~;
* :mod:`.problem`: the model as a function of its scales (loss, gradients, the bound's HVP);
* :mod:`.optimizer`: Adam over the scales, with the reference's state;
* :mod:`.loop`: the iterations (an objective step or a bound step each);
* :mod:`.probe`: the check that the learned init trains at least as well as the original.
"""
