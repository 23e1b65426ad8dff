using System.Net.Sockets;
using DirBackup.Tests.Infrastructure;
using Xunit;

namespace DirBackup.Tests.Integration;

/// <summary>Start, permissions and stop of a daemon of its own (these tests stop it).</summary>
public sealed class LifecycleTests : IDisposable
{
    private readonly TempDir _dir = new("dirbackupd-life");

    public void Dispose() => _dir.Dispose();

    [Fact]
    public async Task The_socket_is_root_only_in_a_private_directory()
    {
        var socket = _dir.Combine("run", "dirbackupd.sock");
        await using var daemon = await DaemonProcess.StartAsync(socket);
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(socket));
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute, File.GetUnixFileMode(Path.GetDirectoryName(socket)!));
    }

    [Fact]
    public async Task Sigterm_stops_cleanly_and_removes_the_socket()
    {
        var socket = _dir.Combine("run", "dirbackupd.sock");
        await using var daemon = await DaemonProcess.StartAsync(socket);
        using (var client = LineClient.Connect(socket))
        {
            Assert.Equal(0, await daemon.TerminateAsync());
        }
        Assert.False(File.Exists(socket));
        Assert.Contains("<6>dirbackupd: stopping: SIGTERM", daemon.Output, StringComparison.Ordinal);
        Assert.Contains("<6>dirbackupd: stopped", daemon.Output, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_stale_socket_file_is_replaced_and_a_live_one_is_not_taken_over()
    {
        var socket = _dir.Combine("run", "dirbackupd.sock");
        Directory.CreateDirectory(Path.GetDirectoryName(socket)!);
        using (var stale = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified))
        {
            stale.Bind(new UnixDomainSocketEndPoint(socket));
        }
        await using var daemon = await DaemonProcess.StartAsync(socket);
        using (LineClient.Connect(socket))
        {
        }

        var second = System.Diagnostics.Process.Start(new System.Diagnostics.ProcessStartInfo("dotnet", ["exec", DaemonProcess.DaemonDll, "serve", "--socket", socket]) { RedirectStandardOutput = true })!;
        var output = await second.StandardOutput.ReadToEndAsync();
        await second.WaitForExitAsync();
        Assert.Equal(1, second.ExitCode);
        Assert.Contains($"another dirbackupd already listens on {socket}", output, StringComparison.Ordinal);
        using (LineClient.Connect(socket))
        {
        }
    }

    [Fact]
    [Trait("speed", "slow")]
    public async Task Restore_exports_and_mounts_left_by_a_crashed_daemon_are_removed_at_start()
    {
        var socket = _dir.Combine("run", "dirbackupd.sock");
        var storage = new StorageBuilder(_dir.Combine("store"));
        var backup = await storage.AddVmWithImageAsync(100, 1700000000);
        var container = storage.AddContainer(101, 1700000000, archive: "archive.sqfs");
        var squashfs = Path.Combine(container.Directory, "archive.sqfs");
        File.Delete(squashfs);
        Directory.CreateDirectory(_dir.Combine("ct", "sbin"));
        await SourceDisk.Run("mksquashfs", _dir.Combine("ct"), squashfs, "-quiet", "-no-progress");
        string export;
        string mount;
        await using (var first = await DaemonProcess.StartAsync(socket))
        {
            using var client = LineClient.Connect(socket);
            export = ExportDisk(client, storage, backup);
            mount = client.Call("restore_container_init", Json.Params(storage, ("volname", container.VolName), ("info", new System.Text.Json.Nodes.JsonObject())))!["archive-directory"]!.GetValue<string>();
            await first.CrashAsync();
        }
        Assert.Contains(export, File.ReadAllText("/proc/self/mountinfo"), StringComparison.Ordinal);
        Assert.Contains(mount, File.ReadAllText("/proc/self/mountinfo"), StringComparison.Ordinal);

        await using var second = await DaemonProcess.StartAsync(socket);
        Assert.DoesNotContain(export, File.ReadAllText("/proc/self/mountinfo"), StringComparison.Ordinal);
        Assert.DoesNotContain(mount, File.ReadAllText("/proc/self/mountinfo"), StringComparison.Ordinal);
        Assert.False(File.Exists(export));
        Assert.False(Directory.Exists(mount));
        Assert.Empty(Directory.EnumerateFileSystemEntries(Path.GetDirectoryName(export)!));
    }

    [Fact]
    [Trait("speed", "slow")]
    public async Task A_reader_holding_the_export_across_cleanup_reads_on_and_the_layers_are_let_go_when_it_closes()
    {
        var socket = _dir.Combine("run", "dirbackupd.sock");
        var storage = new StorageBuilder(_dir.Combine("store"));
        var backup = await storage.AddVmWithImageAsync(100, 1700000000);
        var image = Path.Combine(backup.Directory, "drive-scsi0.qcow2");
        await SourceDisk.Run("qemu-io", "-f", "qcow2", "-c", "write -P 0x3c 1M 1M", image);
        await using var daemon = await DaemonProcess.StartAsync(socket);
        using var client = LineClient.Connect(socket);
        var export = ExportDisk(client, storage, backup);

        using (var held = new FileStream(export, FileMode.Open, FileAccess.Read))
        {
            client.Call("restore_vm_volume_cleanup", DiskParams(storage, backup));
            client.Call("restore_vm_cleanup", Json.Params(storage, ("volname", backup.VolName)));
            Assert.DoesNotContain(export, File.ReadAllText("/proc/self/mountinfo"), StringComparison.Ordinal);

            // Lazily detached: a file a reader already holds keeps answering.
            var data = new byte[1 << 20];
            held.Position = 1 << 20;
            held.ReadExactly(data);
            Assert.Equal(-1, data.AsSpan().IndexOfAnyExcept((byte)0x3c));
            Assert.True(HoldsOpen(daemon.Pid, image));
        }

        // The last reference gone, the kernel ends the connection and the daemon's threads close the layers.
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        while (HoldsOpen(daemon.Pid, image) && DateTime.UtcNow < deadline)
        {
            await Task.Delay(50);
        }
        Assert.False(HoldsOpen(daemon.Pid, image));
    }

    /// <summary>restore_vm_init and restore_vm_volume_init of the backup's one disk, as qmrestore begins; the exported path.</summary>
    private static string ExportDisk(LineClient client, StorageBuilder storage, PreparedBackup backup)
    {
        client.Call("restore_vm_init", Json.Params(storage, ("volname", backup.VolName)));
        return client.Call("restore_vm_volume_init", DiskParams(storage, backup))!["qemu-img-path"]!.GetValue<string>();
    }

    private static System.Text.Json.Nodes.JsonNode DiskParams(StorageBuilder storage, PreparedBackup backup) =>
        Json.Params(storage, ("volname", backup.VolName), ("device", "drive-scsi0"), ("info", new System.Text.Json.Nodes.JsonObject()));

    private static bool HoldsOpen(int pid, string path) =>
        Directory.EnumerateFileSystemEntries($"/proc/{pid}/fd").Any(fd =>
        {
            try
            {
                return new FileInfo(fd).LinkTarget == path;
            }
            catch (IOException)
            {
                return false;
            }
        });

    [Fact]
    [Trait("speed", "slow")]
    public async Task A_stopping_daemon_tears_its_restore_exports_down()
    {
        var socket = _dir.Combine("run", "dirbackupd.sock");
        var storage = new StorageBuilder(_dir.Combine("store"));
        var backup = await storage.AddVmWithImageAsync(100, 1700000000);
        await using var daemon = await DaemonProcess.StartAsync(socket);
        string export;
        using (var client = LineClient.Connect(socket))
        {
            export = ExportDisk(client, storage, backup);
        }
        Assert.Equal(0, await daemon.TerminateAsync());
        Assert.DoesNotContain(export, File.ReadAllText("/proc/self/mountinfo"), StringComparison.Ordinal);
        Assert.False(File.Exists(export));
    }

    [Fact]
    public async Task Every_log_line_carries_a_syslog_priority()
    {
        var socket = _dir.Combine("run", "dirbackupd.sock");
        await using var daemon = await DaemonProcess.StartAsync(socket);
        using (var client = LineClient.Connect(socket))
        {
            client.Fail("free_image", Json.Params(("storeid", "x"), ("scfg", new System.Text.Json.Nodes.JsonObject { ["path"] = "/nonexistent" }), ("volname", "backup/x")));
        }
        await daemon.WaitForOutputAsync("free_image from pid");
        await daemon.TerminateAsync();
        var lines = daemon.Output.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.NotEmpty(lines);
        Assert.All(lines, line => Assert.Matches("^<[2-7]>dirbackupd: ", line));
    }

    [Theory]
    [InlineData("--runtime-dir", "relative/run", "dirbackupd: --runtime-dir 'relative/run' is not an absolute path")]
    [InlineData("--socket", "run/../dirbackupd.sock", "dirbackupd: --socket 'run/../dirbackupd.sock' is not an absolute path")]
    [InlineData("--runtime-dir", "/run/../tmp", "dirbackupd: --runtime-dir '/run/../tmp' contains '.' or '..'")]
    public async Task A_bad_path_option_stops_the_daemon_with_one_line_naming_it(string option, string value, string expected)
    {
        var socket = _dir.Combine("run", "dirbackupd.sock");
        var args = new List<string> { "exec", DaemonProcess.DaemonDll, "serve", "--socket", socket, "--runtime-dir", _dir.Combine("qsd") };
        args[args.IndexOf(option) + 1] = value;
        var start = new System.Diagnostics.ProcessStartInfo("dotnet", args) { RedirectStandardOutput = true, RedirectStandardError = true };
        using var daemon = System.Diagnostics.Process.Start(start)!;
        var stdout = daemon.StandardOutput.ReadToEndAsync();
        var stderr = await daemon.StandardError.ReadToEndAsync();
        await daemon.WaitForExitAsync();
        Assert.Equal(2, daemon.ExitCode);
        Assert.Equal(expected, stderr.TrimEnd('\n'));
        Assert.Equal("", await stdout);
        Assert.False(File.Exists(socket));
    }
}
