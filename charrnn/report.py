"""The former path of charrnn.studies.report: `python -m charrnn.report` still runs it."""

import sys

from charrnn.studies.report import main

if __name__ == "__main__":
    print(f"note: {__spec__.name} is charrnn.studies.report now "
          "(python -m charrnn.studies.report)", file=sys.stderr)
    main()
