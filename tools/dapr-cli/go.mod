module github.com/image-classifier/tools/dapr-cli

go 1.24.9

require github.com/dapr/cli v1.16.5

// The CLI's go.mod pins github.com/dapr/dapr v1.16.2, whose go.mod names
// components-contrib v1.16.3, which the Go module proxy does not serve; the CLI
// uses none of its components (it links the runtime's packages for types only).
// The other lines are carried over from github.com/dapr/dapr v1.16.2's go.mod.
replace (
	dubbo.apache.org/dubbo-go/v3 => dubbo.apache.org/dubbo-go/v3 v3.0.3-0.20230118042253-4f159a2b38f3
	gopkg.in/couchbaselabs/gocbconnstr.v1 => github.com/couchbaselabs/gocbconnstr v1.0.5
	github.com/dapr/components-contrib => github.com/dapr/components-contrib v1.16.1
	github.com/chenzhuoyu/iasm => github.com/chenzhuoyu/iasm v0.9.0
	github.com/chzyer/logex => github.com/chzyer/logex v1.2.1
	github.com/gobwas/pool => github.com/gobwas/pool v0.2.1
	github.com/toolkits/concurrent => github.com/niean/gotools v0.0.0-20151221085310-ff3f51fc5c60
)
