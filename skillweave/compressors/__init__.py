"""Delta compressors, one plugin module per method, each registered in `core.compressors.COMPRESSORS`
(no module imports another):

  skillzip    SkillZip: smoothing, truncated SVD, rotation, INT8/INT4 factors (skillweave.zip)
  bitdelta    BitDelta: one sign bit per entry and one scale per matrix, scales distilled when calibrated
  delta_come  Delta-CoMe (our simplification): SVD factors, leading vectors at 8 bits, the rest at 4
  twin        Twin-Merging's exclusive knowledge: rank-`zip.rank` fp16 SVD factors
"""
