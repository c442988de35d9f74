module github.com/fidius-go/fidius

go 1.24

require (
	github.com/BurntSushi/toml v1.4.0
	github.com/dsnet/compress v0.0.1
	go.uber.org/zap v1.27.0
)

require (
	github.com/stretchr/testify v1.10.0 // indirect
	go.uber.org/multierr v1.10.0 // indirect
)
