"""lm-eval tasks over offline data: `skillweave_math`, `skillweave_arith`, `skillweave_humaneval`,
`skillweave_codetasks`, `skillweave_ifeval`, `skillweave_dialogue`.

The YAMLs here are plain lm-eval 0.4.13 task configs; their data loaders (`custom_dataset`) and
scorers (`process_results`) live in `skillweave.tasks.utils`, referenced by full module path, so
skillweave must be importable (`pip install -e .`). From the command line:

    lm_eval --model hf --model_args pretrained=/abs/model_dir,dtype=bfloat16 \\
        --include_path "$(python -c 'import skillweave.evaluation as e; print(e.TASK_DIR)')" \\
        --tasks skillweave_math,skillweave_humaneval,skillweave_ifeval \\
        --apply_chat_template --confirm_run_unsafe_code --gen_kwargs max_gen_toks=512

- `--confirm_run_unsafe_code` is required for skillweave_humaneval and skillweave_codetasks, which
  execute the model's code (in `skillweave.sandbox`); lm-eval refuses them without it.
  HF_ALLOW_CODE_EVAL is not needed: it gates HF `evaluate`'s code_eval metric, not used here.
- `--limit N` takes the first N docs; `skillweave.evaluation.evaluate(limit=N)` takes a seeded
  random N instead, i.e. `--samples '{"skillweave_math": [...sorted indices...]}'`.
- `--metadata n=500` sets the size of the math sets (defaults: 200 for skillweave_math, 500 for
  skillweave_arith, the YAMLs' `metadata.n`).
- Without `--apply_chat_template` the raw prompt is sent (for base models).
"""
