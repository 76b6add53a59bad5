"""The eval configurations, one plugin module per family; each module registers its own in
`core.configurations.CONFIGURATIONS` and no module imports another. `eval.configurations` picks them:

  base          the original backbone on every domain
  dpo           K per-domain DPO models (theta_0 + Delta_k), each on its own domain
  merged        the merged backbone theta_0 + Delta_shared alone (the run's `merge=`)
  merged_<m>    the backbone merged by conf/merge/<m>.yaml alone, whatever `merge=` the run uses
  external      any other HF model directory (`eval.external_model`): a monolith to compare against
  skillweave    the merged backbone + each domain's SkillZip skillpack (oracle routing)
  skillweave_intcheck   the same on the integer path, on a subset (the cross-check of a vLLM-served row)
  skillweave_routed, twin_merging   routed by the learned router (routed.py)
  multitask, lora                   trained baselines (trained.py)
  bitdelta, bitdelta_nodistill, delta_come   compressed-delta baselines (baselines.py)
"""
