"""Network training: what makes the *.safetensors calibration (the calibration package) then ships.

train_all        every network in dependency order, each through train
train            one training loop for every stage (DDP, resumable, --config presets/*.toml)
stages           the four trainable networks as stage objects (Stage: load, batch, loss, validate)
augment          batched augmentation; schedule: learning rate and EMA; checkpoint: state on disk
cache            every image of a split decoded once into memory maps; autocast_policy: depthwise convs in fp32
splits           a leak-free split file; network_outputs: the networks run over a split, cached by content
compare_recipes  training recipes compared on a held-out acquisition source
"""
