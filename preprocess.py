"""Raw data -> Megatron indexed datasets, with the real Mixtral tokenizer.

    python preprocess.py input=data/sample/sample_text.jsonl output_prefix=out/sample
    python preprocess.py input=alpaca.parquet output_prefix=out/alpaca preprocess_handler=alpaca
    python preprocess.py input=DIR output_prefix=out/x workers=2 skip_bad_rows=true
    python preprocess.py ... preprocess_tokenizer=hf tokenizer.path=/ckpt/tokenizer.json

Options live in conf/preprocess.yaml; the work is in mixexp.data.preprocess.
Bad input: one line on stderr, exit code 2.
"""

from mixexp.cli import hydra_entry

if __name__ == "__main__":
    hydra_entry("preprocess", "mixexp.data.preprocess:main")
