from cocoon.core.runtime.cli import main

main()
