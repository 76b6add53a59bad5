"""Domains, one folder each: a plugin that registers its prompt source, its verifiers (rules) and its
eval tasks (lm-eval YAMLs beside their loaders and scorers), with its data.

A domain's run-time settings are `conf/domain/<name>.yaml` (prompt source, sampling, rule set, eval
task) and its rule set `rules/<name>.yaml`. Adding a domain edits no existing file: a new folder here
(or anywhere, named in `domain_dirs`), its conf/domain YAML (or one on `hydra.searchpath`) and its rule
set; docs/adding_a_domain.md walks through one.

The task YAMLs are plain lm-eval 0.4.13 task configs whose loaders and scorers are referenced by full
module path, so skillweave must be importable (`pip install -e .`). From the command line:

    lm_eval --model hf --model_args pretrained=/abs/model_dir,dtype=bfloat16 \\
        --include_path "$(python -c 'import skillweave.domains as d; print(d.__path__[0])')" \\
        --tasks skillweave_math,skillweave_humaneval,skillweave_ifeval \\
        --apply_chat_template --confirm_run_unsafe_code --gen_kwargs max_gen_toks=512

- `--confirm_run_unsafe_code` is required for skillweave_humaneval and skillweave_codetasks, which
  execute the model's code (in `skillweave.sandbox`); lm-eval refuses them without it.
- `--limit N` takes the first N docs; `skillweave.evaluation.evaluate(limit=N)` takes a seeded
  random N instead, i.e. `--samples '{"skillweave_math": [...sorted indices...]}'`.
- `--metadata n=500` sets the size of the math sets (defaults: 200 for skillweave_math, 500 for
  skillweave_arith, the YAMLs' `metadata.n`).
- Without `--apply_chat_template` the raw prompt is sent (for base models).
"""
