import sys

from alignsuite.cli import main

if __name__ == "__main__":
    # `python -m alignsuite` is the `alignsuite` script: the help jsonargparse builds itself (`--model.objective.help`)
    # names the program after argv[0], which is this file's path here.
    sys.argv[0] = "alignsuite"
    main()
