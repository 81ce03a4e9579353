from rlvr_linearity.cli import main

if __name__ == "__main__":
    main()
