from edge_moe.cli import main

main()
