package cache

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	"github.com/redis/go-redis/v9"
)

// SetRedisLogger sends go-redis's own log lines (pool dial failures,
// Sentinel and Cluster events), which it otherwise writes to stderr as
// plain text, to log at WARN, so a JSON log stream stays JSON lines.
// go-redis has one logger for the whole process: the last call wins.
func SetRedisLogger(log *slog.Logger) {
	redis.SetLogger(redisLogger{log})
}

// redisLogger adapts slog to go-redis's internal.Logging interface.
type redisLogger struct{ log *slog.Logger }

// Printf logs one go-redis line. go-redis formats addresses and errors
// into it, never a password.
func (l redisLogger) Printf(ctx context.Context, format string, v ...any) {
	l.log.WarnContext(ctx, "redis client: "+strings.TrimSpace(fmt.Sprintf(format, v...)))
}
