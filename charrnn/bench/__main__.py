"""`python -m charrnn.bench`: see charrnn/bench/__init__.py."""

from charrnn.bench import main

main()
