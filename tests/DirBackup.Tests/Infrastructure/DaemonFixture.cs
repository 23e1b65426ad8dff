using Xunit;

namespace DirBackup.Tests.Infrastructure;

/// <summary>
/// One real daemon for a whole test run (per way of starting it), like Tmds.Ssh's SshServer: starting a
/// .NET process per test would make the suite slow for nothing, since state lives in the storage directories.
/// </summary>
public abstract class DaemonFixture : IAsyncLifetime
{
    private readonly TempDir _dir = new("dirbackupd");
    private DaemonProcess? _daemon;

    public DaemonProcess Daemon => _daemon ?? throw new InvalidOperationException("daemon not started");
    public string SocketPath => _dir.Combine("run", "dirbackupd.sock");

    protected abstract IEnumerable<string>? Launcher { get; }

    /// <summary>A fresh storage directory for one test.</summary>
    public StorageBuilder NewStorage(string storeId = "test") => new(_dir.Combine($"store-{Guid.NewGuid():N}"), storeId);

    public LineClient Connect(bool hello = true) => LineClient.Connect(SocketPath, hello);

    public async Task InitializeAsync()
    {
        Directory.CreateDirectory(Path.GetDirectoryName(SocketPath)!);
        _daemon = await DaemonProcess.StartAsync(SocketPath, Launcher);
    }

    public async Task DisposeAsync()
    {
        if (_daemon is not null)
        {
            await _daemon.DisposeAsync();
        }
        _dir.Dispose();
    }
}

/// <summary>The daemon creating its own socket, as with <c>dirbackupd serve --socket PATH</c>.</summary>
public sealed class PathSocketDaemon : DaemonFixture
{
    protected override IEnumerable<string>? Launcher => null;
}

/// <summary>The daemon taking a socket systemd created (dirbackupd.socket), through systemd-socket-activate.</summary>
public sealed class ActivatedSocketDaemon : DaemonFixture
{
    protected override IEnumerable<string>? Launcher => ["systemd-socket-activate", "--listen", SocketPath];
}

[CollectionDefinition(Name)]
public sealed class PathSocketCollection : ICollectionFixture<PathSocketDaemon>
{
    public const string Name = "daemon on its own socket";
}

[CollectionDefinition(Name)]
public sealed class ActivatedSocketCollection : ICollectionFixture<ActivatedSocketDaemon>
{
    public const string Name = "daemon on a systemd socket";
}
