# Thin aliases of tasks.py, which needs nothing but Python.
.PHONY: demo test setup
demo:
	python3 tasks.py demo
test:
	python3 tasks.py test
setup:
	python3 tasks.py setup
