# Hydra config groups of kan-lightning (shipped as kan_lightning.conf).
