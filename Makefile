# Shortcuts for developers; the README's two commands need no make.
.PHONY: serve test lint unit bench
serve:
	bash scripts/serve.sh
test:
	bash scripts/test.sh
lint:
	.venv/bin/ruff check src tests scripts bench && .venv/bin/mypy
unit:
	.venv/bin/python -m pytest tests/unit
bench:
	.venv/bin/python bench/lifecycle.py
