from dense_plantain.cli import main

main()
