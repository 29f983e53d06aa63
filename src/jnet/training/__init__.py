"""Training: the config, the loss, the Lightning module and data module, the run directory,
checkpoints and :func:`jnet.training.run.train`. Import the submodule you need.
"""
