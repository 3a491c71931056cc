module github.com/deeptrace/deeptrace

go 1.26.8
