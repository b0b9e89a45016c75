"""Raw data -> Megatron indexed datasets, with the real Mixtral tokenizer.

    python preprocess.py input=data/sample/sample_text.jsonl output_prefix=out/sample
    python preprocess.py input=alpaca.parquet output_prefix=out/alpaca preprocess_handler=alpaca
    python preprocess.py input=DIR output_prefix=out/x workers=2 skip_bad_rows=true
    python preprocess.py ... preprocess_tokenizer=hf tokenizer.path=/ckpt/tokenizer.json

Options live in conf/preprocess.yaml; the work is in mixexp.data.preprocess.
Bad input: one line on stderr, exit code 2.
"""

import sys

import hydra


@hydra.main(version_base="1.3", config_path="conf", config_name="preprocess")
def _main(cfg) -> None:
    from mixexp.data.preprocess import main

    code = main(cfg)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    _main()
