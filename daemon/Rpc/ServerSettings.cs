namespace DirBackup.Rpc;

public sealed record ServerSettings
{
    public const string DefaultSocketPath = "/run/dirbackupd/dirbackupd.sock";

    public string SocketPath { get; init; } = DefaultSocketPath;

    /// <summary>Accept a socket handed over by systemd (LISTEN_FDS) instead of creating one.</summary>
    public bool AllowSocketActivation { get; init; } = true;

    /// <summary>How long a stop waits for calls in flight to notice their cancellation.</summary>
    public TimeSpan ShutdownGrace { get; init; } = TimeSpan.FromSeconds(10);
}
