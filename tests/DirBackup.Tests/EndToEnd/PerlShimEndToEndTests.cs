using System.Diagnostics;
using DirBackup.Tests.Infrastructure;
using Xunit;

namespace DirBackup.Tests.EndToEnd;

/// <summary>
/// The real Perl shim (perl -T, as vzdump runs it) against the real daemon over its Unix socket, on a storage
/// directory holding prepared backups: the Perl side checks what PVE would see (tests/perl/e2e).
/// </summary>
[Collection(PathSocketCollection.Name)]
public sealed class PerlShimEndToEndTests(PathSocketDaemon daemon)
{
    [Fact]
    public async Task The_perl_shim_lists_annotates_protects_and_deletes_prepared_backups()
    {
        var storage = daemon.NewStorage("e2e");
        storage.AddVm(100, 1700000000, notes: "first full");
        storage.AddVm(100, 1700086400, parent: "1700000000");
        storage.AddVm(100, 1700172800, parent: "1700086400", isProtected: true);
        storage.AddVm(205, 1700000500, notes: "Sicherung vor dem Update \u2713\nzweite Zeile");
        storage.AddContainer(300, 1700001000);
        var expect = Path.Combine(storage.Root, "..", $"expect-{Guid.NewGuid():N}.json");
        await File.WriteAllTextAsync(expect, storage.Describe().ToJsonString());

        var psi = new ProcessStartInfo("prove", ["-v", "-I", "perl-shim", "-I", "tests/perl/lib", "tests/perl/e2e"])
        {
            WorkingDirectory = VzdumpVm.RepoRoot,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        psi.Environment["DIRBACKUP_SOCKET"] = daemon.SocketPath;
        psi.Environment["DIRBACKUP_E2E"] = Path.GetFullPath(expect);
        using var prove = Process.Start(psi)!;
        var stdout = prove.StandardOutput.ReadToEndAsync();
        var stderr = prove.StandardError.ReadToEndAsync();
        await prove.WaitForExitAsync();

        Assert.True(prove.ExitCode == 0, $"prove failed ({prove.ExitCode}):\n{await stdout}\n{await stderr}");
        Assert.Contains("All tests successful", await stdout, StringComparison.Ordinal);
    }
}
