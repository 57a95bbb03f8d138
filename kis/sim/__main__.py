from kis.sim.cli import main

main()
