from nex.cli import main

main()
