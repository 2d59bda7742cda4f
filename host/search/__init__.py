"""The GNN + RL pruning search with a hardware-aware reward (``sculpt-host search``).

Modules, in pipeline order: ``config`` (SearchConfig), ``space`` (graph observation, choices -> Plan),
``env`` (Gymnasium env over padded graphs), ``policy`` (GATv2 actor-critic for SB3 PPO), ``ppo`` (the PPO
learner of a run and its budget callback), ``scorer`` (plan ->
masks -> recovery -> BN recalibration -> val accuracy -> MACs -> realize -> export), ``measurer`` (artifact ->
measurement on the devices, cache, dense pairs; ``measurement``: the typed summary), ``candidate`` (what is
measured and what it is worth; the journal row),
``reward`` (paper flops reward, MnasNet latency/energy constraint), ``journal`` (SQLite, resume, measurement
cache; ``CandidatePlan``), ``finetune`` (masked fine-tuning, distillation, BN recalibration), ``costmodel`` and ``projection`` (the
cost model and the AMC-style projection onto the target band), ``evolution`` (aging evolution, the
baseline strategy), ``devices`` (open/measure), ``runner`` (the
loop), ``final`` (fine-tuned, realized, exported and re-measured final models; the report). ``runner`` is imported
by the CLI and imports the torch-loading modules where it uses them; the others import at the top.
"""
