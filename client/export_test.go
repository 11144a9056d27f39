package client

// KeepAliveRoutes reports, for tests outside the package, how many
// keepalive streams c has open and how many members it renews with unary
// calls (they did not serve the stream).
func KeepAliveRoutes(c *Client) (streams, unary int) {
	c.kaStreams.Range(func(any, any) bool { streams++; return true })
	c.mu.Lock()
	unary = len(c.kaNoStream)
	c.mu.Unlock()
	return streams, unary
}
