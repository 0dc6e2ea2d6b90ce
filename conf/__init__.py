# Makes conf/ the package kan_lightning.conf, where Hydra finds it (pkg://kan_lightning.conf);
# an editable install needs this file. YAML only: the resolvers are in kan_lightning.resolvers.
