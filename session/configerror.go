package session

// ConfigError is one problem Config.Validate finds. It wraps
// ErrInvalidConfig and names the Config field at fault, so that a caller
// holding its own names for the fields (environment variables, flags) can
// report the problem under them.
type ConfigError struct {
	// Field is the Config field at fault ("HMACSecret", "Algorithms", ...);
	// empty when the problem lies between fields (no key, or several).
	Field string
	// Problem says what is wrong, without the field's name; it never
	// quotes a secret.
	Problem string
	// text is the whole message, as Error shows it after the prefix.
	text string
}

// Error reads "session: invalid config: <field> <problem>".
func (e *ConfigError) Error() string { return ErrInvalidConfig.Error() + ": " + e.text }

// Unwrap returns ErrInvalidConfig.
func (e *ConfigError) Unwrap() error { return ErrInvalidConfig }

// Problems returns every problem Validate would report, one *ConfigError
// each, in a stable order; none for a valid configuration. It does no I/O.
func (c Config) Problems() []*ConfigError {
	_, _, problems := c.check()
	return problems
}
