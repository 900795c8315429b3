"""The former path of charrnn.studies.speakers: `python -m charrnn.speakers` still runs it."""

import sys

from charrnn.studies.speakers import main

if __name__ == "__main__":
    print(f"note: {__spec__.name} is charrnn.studies.speakers now "
          "(python -m charrnn.studies.speakers)", file=sys.stderr)
    main()
