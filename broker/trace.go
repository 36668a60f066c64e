package broker

import (
	"context"
	"errors"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/qtb-dev/qlik-token-broker/metrics"
)

// Spans the broker starts under the request's span (which the HTTP server
// starts when tracing is on), or as roots for background refreshes.
const (
	spanL1       = "cache.l1"
	spanRedis    = "cache.redis"
	spanFill     = "cache.fill"
	spanUpstream = "upstream.token"
	spanRefresh  = "token.refresh"
)

// Span attributes. None ever holds a user id, email, session or token: only
// the tenant id (from configuration) and bounded results.
const (
	attrTenant  = attribute.Key("qtb.tenant")
	attrTier    = attribute.Key("qtb.cache.tier")   // on the request: l1, redis or none (filled)
	attrResult  = attribute.Key("qtb.cache.result") // on a lookup: hit, miss or error
	attrLease   = attribute.Key("qtb.lease")        // on a fill: the metrics.Lease* label
	attrOutcome = attribute.Key("qtb.outcome")      // on an upstream call or refresh
)

// tierNone is the request's cache tier when no cache had a servable token.
const tierNone = "none"

// newTracer returns the tracer to use and whether tracing is on: cfg's, or
// a no-op one when it is nil.
func newTracer(t trace.Tracer) (trace.Tracer, bool) {
	if t == nil {
		return noop.NewTracerProvider().Tracer(""), false
	}
	return t, true
}

// annotate tells the request's span which tenant and cache tier served it.
// Off, it costs a branch: it runs on every cached token.
func (b *Broker) annotate(ctx context.Context, tenant, tier string) {
	if !b.traced {
		return
	}
	if span := trace.SpanFromContext(ctx); span.IsRecording() {
		span.SetAttributes(attrTenant.String(tenant), attrTier.String(tier))
	}
}

// noSpan is the span of an untraced lookup: it records nothing.
var noSpan = trace.SpanFromContext(context.Background())

// endLookup ends a cache lookup's span with its result.
func endLookup(span trace.Span, result string) {
	if span.IsRecording() {
		span.SetAttributes(attrResult.String(result))
	}
	span.End()
}

// endSpan ends span with outcome, marking it failed when err is not nil.
// err's text is never recorded: it may quote the tenant's answer about a
// user.
func endSpan(span trace.Span, outcome string, err error) {
	if span.IsRecording() {
		span.SetAttributes(attrOutcome.String(outcome))
		if err != nil {
			span.SetStatus(codes.Error, outcome)
		}
	}
	span.End()
}

// spanOutcome classifies the result of an upstream token call, for its
// span: outcome's labels, refined by the broker's own refusals.
func spanOutcome(err error) string {
	var ue *UnavailableError
	switch {
	case errors.As(err, &ue):
		return ue.Cause.String()
	case errors.Is(err, ErrUnknownUser):
		return "unknown_user"
	case errors.Is(err, ErrInvalidClient):
		return "invalid_client"
	case errors.Is(err, ErrTokenTooShortLived):
		return "too_short_lived"
	case errors.Is(err, ErrFetchPanicked):
		return "panic"
	case err == nil:
		return metrics.OutcomeSuccess
	}
	return outcome(err)
}

func lookupResult(hit bool) string {
	if hit {
		return metrics.ResultHit
	}
	return metrics.ResultMiss
}
