package broker

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/qtb-dev/qlik-token-broker/metrics"
	"github.com/qtb-dev/qlik-token-broker/qlik"
)

// instrument is the middleware every request goes through: it sets the
// security headers and records request count and latency by route
// template (a proxied websocket counts as a 101 when it closes, without
// a latency). It renders errors itself so the status it records is the
// one sent.
func (a *API) instrument(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		start := time.Now()
		h := c.Response().Header()
		h["X-Content-Type-Options"] = hdrNoSniff
		h["Referrer-Policy"] = hdrNoReferer
		if err := next(c); err != nil {
			c.Error(err)
		}
		route := c.Path()
		if route == "" || c.Response().Status == http.StatusNotFound && route == "/*" {
			route = "unmatched"
		}
		status := c.Response().Status
		s := a.series.get(a.m, route, methodLabel(c.Request().Method), status)
		s.requests.Inc()
		if status != http.StatusSwitchingProtocols { // a websocket's lifetime is not a latency
			s.duration.Observe(time.Since(start).Seconds())
		}
		return nil
	}
}

// methodLabel bounds the method label: a client may send any token as a
// method, and every distinct label value is a new series.
func methodLabel(m string) string {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodOptions, http.MethodConnect, http.MethodTrace:
		return m
	}
	return "other"
}

// httpSeries are the request metrics of one route, method and status,
// resolved once: a label lookup hashes every label value on each call.
type httpSeries struct {
	requests prometheus.Counter
	duration prometheus.Observer
}

type seriesKey struct {
	route, method string
	code          int
}

// seriesCache maps label values to resolved series. Routes, methods and
// statuses are bounded sets, so it is too.
type seriesCache struct {
	mu sync.RWMutex
	m  map[seriesKey]httpSeries
}

func (sc *seriesCache) get(m *metrics.Metrics, route, method string, code int) httpSeries {
	k := seriesKey{route, method, code}
	sc.mu.RLock()
	s, ok := sc.m[k]
	sc.mu.RUnlock()
	if ok {
		return s
	}
	s = httpSeries{
		requests: m.HTTPRequests.WithLabelValues(route, method, strconv.Itoa(code)),
		duration: m.HTTPDuration.WithLabelValues(route),
	}
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if sc.m == nil {
		sc.m = make(map[seriesKey]httpSeries)
	}
	sc.m[k] = s
	return s
}

// observeUpstream counts one call to a tenant and how long it took.
func observeUpstream(m *metrics.Metrics, tenant, endpoint string, took time.Duration, err error) {
	m.UpstreamRequests.WithLabelValues(tenant, endpoint, outcome(err)).Inc()
	m.UpstreamDuration.WithLabelValues(tenant, endpoint).Observe(took.Seconds())
}

// outcome classifies an upstream error into a bounded metrics label.
func outcome(err error) string {
	var qe *qlik.Error
	switch {
	case err == nil:
		return metrics.OutcomeSuccess
	case errors.As(err, &qe) && qe.StatusCode == 429:
		return metrics.OutcomeRateLimited
	case errors.As(err, &qe) && qe.StatusCode >= 500:
		return metrics.OutcomeServerError
	case errors.As(err, &qe):
		return metrics.OutcomeClientError
	case errors.Is(err, qlik.ErrMalformedResponse):
		return metrics.OutcomeMalformed
	case errors.Is(err, context.DeadlineExceeded):
		return metrics.OutcomeTimeout
	default:
		return metrics.OutcomeNetwork
	}
}

// countRedisError counts a failed Redis operation; the detail goes to the
// debug log only (a degraded Redis fails every call).
func countRedisError(ctx context.Context, d deps, op string, err error) {
	d.m.RedisErrors.WithLabelValues(op).Inc()
	d.log.DebugContext(ctx, "redis operation failed", "op", op, "err", err)
}
