"""The former path of charrnn.studies.diagnostics: `python -m charrnn.diagnostics` still runs it."""

import sys

from charrnn.studies.diagnostics import main

if __name__ == "__main__":
    print(f"note: {__spec__.name} is charrnn.studies.diagnostics now "
          "(python -m charrnn.studies.diagnostics)", file=sys.stderr)
    main()
