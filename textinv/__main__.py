from textinv.cli import main

main()
