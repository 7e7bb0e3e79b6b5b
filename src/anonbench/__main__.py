from anonbench.cli import main

main()
