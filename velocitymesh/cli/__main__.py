from velocitymesh.cli import main

main()
