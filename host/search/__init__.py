"""The GNN + RL pruning search with a hardware-aware reward (``sculpt-host search``).

Modules, in pipeline order: ``config`` (SearchConfig), ``space`` (graph observation, choices -> Plan),
``env`` (Gymnasium env over padded graphs), ``policy`` (GATv2 actor-critic for SB3 PPO), ``candidate``
(plan -> masks -> BN recalibration -> val accuracy -> MACs -> realize -> export -> measurement),
``reward`` (paper flops reward, MnasNet latency/energy constraint), ``journal`` (SQLite, resume, measurement
cache), ``finetune`` (masked fine-tuning, distillation, BN recalibration), ``costmodel`` and ``projection`` (the
cost model and the AMC-style projection onto the target band), ``devices`` (open/measure), ``runner`` (the
loop), ``final`` (fine-tuned, realized, exported and re-measured final models; the report). Heavy imports stay inside modules.
"""
